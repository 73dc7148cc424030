//! Defender for Cloud JIT network access policies (Microsoft.Security, api-version 2020-01-01).

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use serde_json::{Value, json};

use super::arm::{ArmError, get_ci, get_str_ci, normalize_scope};
use super::state::{JitPolicy, State, ports_mut};
use super::time::{fmt_time, format_duration, parse_duration, parse_time};

/// Parsed JIT path.
#[derive(Debug, Clone)]
pub struct JitPath {
    pub subscription: String,
    pub resource_group: Option<String>,
    pub location: Option<String>,
    pub name: Option<String>,
    pub initiate: bool,
}

fn jit_invalid(detail: &str, msg: String) -> ArmError {
    ArmError::bad_request("BadRequest", msg.clone()).with_detail(detail, msg)
}

fn check_sub_rg(state: &State, p: &JitPath) -> Result<(), ArmError> {
    let Some(sub) = state.world.subscription(&p.subscription) else {
        return Err(ArmError::new(
            404,
            "SubscriptionNotFound",
            format!("The subscription '{}' could not be found.", p.subscription),
        ));
    };
    if let Some(rg) = &p.resource_group
        && !sub
            .resource_groups
            .iter()
            .any(|g| g.name.eq_ignore_ascii_case(rg))
    {
        return Err(ArmError::new(
            404,
            "ResourceGroupNotFound",
            format!("Resource group '{rg}' could not be found."),
        ));
    }
    Ok(())
}

fn not_found(p: &JitPath) -> ArmError {
    ArmError::new(
        404,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.Security/locations/{}/jitNetworkAccessPolicies/{}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            p.location.as_deref().unwrap_or_default(),
            p.name.as_deref().unwrap_or_default(),
            p.resource_group.as_deref().unwrap_or_default()
        ),
    )
}

fn matches(pol: &JitPolicy, p: &JitPath) -> bool {
    pol.subscription.eq_ignore_ascii_case(&p.subscription)
        && p.resource_group
            .as_ref()
            .is_none_or(|rg| pol.resource_group.eq_ignore_ascii_case(rg))
        && p.location
            .as_ref()
            .is_none_or(|l| pol.location.eq_ignore_ascii_case(l))
        && p.name
            .as_ref()
            .is_none_or(|n| pol.name.eq_ignore_ascii_case(n))
}

/// Index of the first policy matching `p`: by the index when `p` names one policy, else by a
/// scan.
fn find(state: &State, p: &JitPath) -> Option<usize> {
    match (&p.resource_group, &p.location, &p.name) {
        (Some(rg), Some(loc), Some(name)) => state.jit_policy_index(&p.subscription, rg, loc, name),
        _ => state.jit_policies.iter().position(|pol| matches(pol, p)),
    }
}

pub fn list(state: &mut State, p: &JitPath, now: DateTime<Utc>) -> Result<Vec<Value>, ArmError> {
    check_sub_rg(state, p)?;
    Ok(state
        .jit_policies
        .iter_mut()
        .filter(|pol| matches(pol, p))
        .map(|pol| {
            pol.expire(now);
            pol.to_json()
        })
        .collect())
}

pub fn get(state: &mut State, p: &JitPath, now: DateTime<Utc>) -> Result<Value, ArmError> {
    check_sub_rg(state, p)?;
    let pol = find(state, p)
        .and_then(|i| state.jit_policies.get_mut(i))
        .ok_or_else(|| not_found(p))?;
    pol.expire(now);
    Ok(pol.to_json())
}

pub fn delete(state: &mut State, p: &JitPath) -> Result<u16, ArmError> {
    check_sub_rg(state, p)?;
    let before = state.jit_policies.len();
    state.jit_policies.retain(|pol| !matches(pol, p));
    if state.jit_policies.len() == before {
        return Ok(204);
    }
    state.reindex_jit();
    Ok(200)
}

/// Validates and canonicalises a policy's `virtualMachines` (camelCase out, any case in).
pub fn canonical_policy_vms(vms: &Value) -> Result<Value, ArmError> {
    let Some(arr) = vms.as_array() else {
        return Err(ArmError::invalid_body(
            "The property 'properties.virtualMachines' must be an array.",
        ));
    };
    let mut out = Vec::new();
    for (i, vm) in arr.iter().enumerate() {
        let ctx = format!("properties.virtualMachines[{i}].");
        let Some(id) = get_str_ci(vm, "id", &ctx)? else {
            return Err(ArmError::invalid_body(format!(
                "The property '{ctx}id' is required."
            )));
        };
        let Some(ports) = get_ci(vm, "ports").and_then(Value::as_array) else {
            return Err(ArmError::invalid_body(format!(
                "The property '{ctx}ports' is required and must be an array."
            )));
        };
        let mut out_ports = Vec::new();
        for (j, port) in ports.iter().enumerate() {
            let pctx = format!("{ctx}ports[{j}].");
            let number = get_ci(port, "number")
                .and_then(Value::as_u64)
                .filter(|n| *n <= 65535)
                .ok_or_else(|| {
                    ArmError::invalid_body(format!(
                        "The property '{pctx}number' is required and must be an integer 0..65535."
                    ))
                })?;
            let protocol = get_str_ci(port, "protocol", &pctx)?.ok_or_else(|| {
                ArmError::invalid_body(format!("The property '{pctx}protocol' is required."))
            })?;
            let protocol = match protocol.to_ascii_uppercase().as_str() {
                "TCP" => "TCP",
                "UDP" => "UDP",
                "*" => "*",
                _ => {
                    return Err(ArmError::invalid_body(format!(
                        "The property '{pctx}protocol' must be one of 'TCP', 'UDP', '*'."
                    )));
                }
            };
            let prefix = get_str_ci(port, "allowedSourceAddressPrefix", &pctx)?;
            let prefixes = get_ci(port, "allowedSourceAddressPrefixes");
            let max = get_str_ci(port, "maxRequestAccessDuration", &pctx)?.ok_or_else(|| {
                ArmError::invalid_body(format!(
                    "The property '{pctx}maxRequestAccessDuration' is required."
                ))
            })?;
            let d = parse_duration(&max).ok_or_else(|| {
                ArmError::invalid_body(format!(
                    "The property '{pctx}maxRequestAccessDuration' ('{max}') is not an ISO 8601 duration."
                ))
            })?;
            if d < Duration::minutes(5) || d > Duration::days(1) {
                return Err(jit_invalid(
                    "JitInvalidMaxRequestAccessDuration",
                    format!(
                        "maxRequestAccessDuration '{max}' of port {number} must be between PT5M and P1D."
                    ),
                ));
            }
            let mut p = json!({"number": number, "protocol": protocol});
            match (prefix, prefixes) {
                (Some(_), Some(_)) => {
                    return Err(jit_invalid(
                        "JitInvalidSourceAddressPrefix",
                        format!(
                            "Port {number}: specify either allowedSourceAddressPrefix or allowedSourceAddressPrefixes, not both."
                        ),
                    ));
                }
                (Some(s), None) => {
                    validate_prefix(&s, number)?;
                    p["allowedSourceAddressPrefix"] = json!(s);
                }
                (None, Some(list)) => {
                    let list: Vec<String> = list
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    if list.is_empty() {
                        return Err(jit_invalid(
                            "JitInvalidSourceAddressPrefix",
                            format!(
                                "Port {number}: allowedSourceAddressPrefixes must be a non-empty array of strings."
                            ),
                        ));
                    }
                    for s in &list {
                        validate_prefix(s, number)?;
                    }
                    p["allowedSourceAddressPrefixes"] = json!(list);
                }
                (None, None) => {
                    return Err(jit_invalid(
                        "JitInvalidSourceAddressPrefix",
                        format!(
                            "Port {number}: one of allowedSourceAddressPrefix or allowedSourceAddressPrefixes is required."
                        ),
                    ));
                }
            }
            p["maxRequestAccessDuration"] = json!(max);
            out_ports.push(p);
        }
        let mut v = json!({"id": id, "ports": out_ports});
        if let Some(ip) = get_str_ci(vm, "publicIpAddress", &ctx)? {
            v["publicIpAddress"] = json!(ip);
        }
        out.push(v);
    }
    Ok(Value::Array(out))
}

fn validate_prefix(s: &str, number: u64) -> Result<(), ArmError> {
    if s == "*" || s.eq_ignore_ascii_case("any") || parse_net(s).is_some() {
        Ok(())
    } else {
        Err(jit_invalid(
            "JitInvalidSourceAddressPrefix",
            format!("Port {number}: '{s}' is not an IP address, a CIDR prefix or '*'."),
        ))
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

pub fn put(
    state: &mut State,
    p: &JitPath,
    body: &Value,
    now: DateTime<Utc>,
) -> Result<Value, ArmError> {
    check_sub_rg(state, p)?;
    let props = get_ci(body, "properties")
        .ok_or_else(|| ArmError::invalid_body("The property 'properties' is required."))?;
    let vms_in = get_ci(props, "virtualMachines").ok_or_else(|| {
        ArmError::invalid_body("The property 'properties.virtualMachines' is required.")
    })?;
    let vms = canonical_policy_vms(vms_in)?;
    for vm in vms.as_array().into_iter().flatten() {
        let id = vm.get("id").and_then(Value::as_str).unwrap_or_default();
        let n = normalize_scope(id);
        let in_rg = super::arm::resource_group_of(&n).is_some_and(|rg| {
            p.resource_group
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(&rg))
        }) && super::arm::subscription_of(&n)
            .is_some_and(|s| s.eq_ignore_ascii_case(&p.subscription));
        if state.world.vm(id).is_none() || !in_rg {
            return Err(jit_invalid(
                "JitVirtualMachineNotFound",
                format!(
                    "Virtual machine '{id}' was not found in resource group '{}'.",
                    p.resource_group.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    let kind = get_str_ci(body, "kind", "")?.unwrap_or_else(|| "Basic".into());
    let body_requests = get_ci(props, "requests").and_then(Value::as_array).cloned();
    let name = p.name.clone().unwrap_or_default();
    let location = p.location.clone().unwrap_or_default();
    let existing = find(state, p);
    let idx = match existing {
        Some(i) => {
            let Some(pol) = state.jit_policies.get_mut(i) else {
                return Err(ArmError::new(500, "InternalServerError", "policy store"));
            };
            pol.virtual_machines = vms;
            pol.kind = kind;
            if let Some(r) = body_requests {
                pol.requests = r;
                pol.requests_changed();
            }
            i
        }
        None => {
            state.jit_policies.push(JitPolicy {
                subscription: p.subscription.clone(),
                resource_group: p.resource_group.clone().unwrap_or_default(),
                location,
                name,
                kind,
                virtual_machines: vms,
                requests: body_requests.unwrap_or_default(),
                next_end: Some(DateTime::<Utc>::MIN_UTC),
            });
            state.reindex_jit();
            state.jit_policies.len() - 1
        }
    };
    let Some(pol) = state.jit_policies.get_mut(idx) else {
        return Err(ArmError::new(500, "InternalServerError", "policy store"));
    };
    pol.expire(now);
    Ok(pol.to_json())
}

/// Source prefix the request asks for: allowed when the policy rule is `*`/`Any`, or when the
/// requested address/prefix lies inside one of the rule's prefixes (Azure was also seen
/// requiring a verbatim match; the sim accepts containment).
fn prefix_allowed(rule: &Value, requested: &str) -> bool {
    let mut allowed: Vec<String> = Vec::new();
    if let Some(s) = rule
        .get("allowedSourceAddressPrefix")
        .and_then(Value::as_str)
    {
        allowed.push(s.to_string());
    }
    if let Some(a) = rule
        .get("allowedSourceAddressPrefixes")
        .and_then(Value::as_array)
    {
        allowed.extend(a.iter().filter_map(|x| x.as_str().map(String::from)));
    }
    let req = parse_net(requested);
    allowed.iter().any(|a| {
        if a == "*" || a.eq_ignore_ascii_case("any") {
            return true;
        }
        if a.eq_ignore_ascii_case(requested) {
            return true;
        }
        match (parse_net(a), req) {
            (Some(an), Some(rn)) => an.contains(&rn),
            _ => false,
        }
    })
}

pub fn initiate(
    state: &mut State,
    p: &JitPath,
    body: &Value,
    now: DateTime<Utc>,
    requestor: &str,
    client_ip: &str,
) -> Result<Value, ArmError> {
    check_sub_rg(state, p)?;
    let initiate_status = state.world.settings.jit_initiate_status.clone();
    let retention = state.world.settings.jit_request_retention.max(1);
    let Some(pol) = find(state, p).and_then(|i| state.jit_policies.get_mut(i)) else {
        return Err(not_found(p));
    };
    pol.expire(now);
    let vms = get_ci(body, "virtualMachines")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ArmError::invalid_body(
                "The property 'virtualMachines' is required and must be a non-empty array.",
            )
        })?;
    let justification = get_str_ci(body, "justification", "")?;
    let mut out_vms = Vec::new();
    let mut opened: Vec<(String, u64)> = Vec::new();
    // The earliest end among the ports this request opens.
    let mut first_end: Option<DateTime<Utc>> = None;
    for (i, vm) in vms.iter().enumerate() {
        let ctx = format!("virtualMachines[{i}].");
        let id = get_str_ci(vm, "id", &ctx)?.ok_or_else(|| {
            ArmError::invalid_body(format!("The property '{ctx}id' is required."))
        })?;
        let Some(pvm) = pol
            .virtual_machines
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| {
                v.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|x| normalize_scope(x).eq_ignore_ascii_case(&normalize_scope(&id)))
            })
        else {
            return Err(jit_invalid(
                "JitVirtualMachineNotInPolicy",
                format!(
                    "Virtual machine '{id}' is not part of JIT network access policy '{}'.",
                    pol.name
                ),
            ));
        };
        let ports = get_ci(vm, "ports")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ArmError::invalid_body(format!(
                    "The property '{ctx}ports' is required and must be a non-empty array."
                ))
            })?;
        let mut out_ports = Vec::new();
        for (j, port) in ports.iter().enumerate() {
            let pctx = format!("{ctx}ports[{j}].");
            let number = get_ci(port, "number")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    ArmError::invalid_body(format!(
                        "The property '{pctx}number' is required and must be an integer."
                    ))
                })?;
            let Some(rule) = pvm
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r.get("number").and_then(Value::as_u64) == Some(number))
            else {
                return Err(jit_invalid(
                    "JitPortNotInPolicy",
                    format!(
                        "Port {number} is not configured in the JIT policy for virtual machine '{id}'."
                    ),
                ));
            };
            let end_in = get_str_ci(port, "endTimeUtc", &pctx)?;
            let dur_in = get_str_ci(port, "duration", &pctx)?;
            let end = match (end_in, dur_in) {
                (Some(_), Some(_)) => {
                    return Err(jit_invalid(
                        "JitInvalidEndTime",
                        format!(
                            "Port {number}: specify exactly one of endTimeUtc or duration, not both."
                        ),
                    ));
                }
                (None, None) => {
                    return Err(jit_invalid(
                        "JitInvalidEndTime",
                        format!("Port {number}: endTimeUtc (or duration) is required."),
                    ));
                }
                (Some(e), None) => parse_time(&e).ok_or_else(|| {
                    jit_invalid(
                        "JitInvalidEndTime",
                        format!("Port {number}: endTimeUtc '{e}' is not a valid UTC date-time."),
                    )
                })?,
                (None, Some(d)) => {
                    let d = parse_duration(&d).filter(|d| *d > Duration::zero()).ok_or_else(|| {
                        jit_invalid(
                            "JitInvalidEndTime",
                            format!("Port {number}: duration '{d}' is not a positive ISO 8601 duration."),
                        )
                    })?;
                    now + d
                }
            };
            let max_s = rule
                .get("maxRequestAccessDuration")
                .and_then(Value::as_str)
                .unwrap_or("PT3H");
            let max = parse_duration(max_s).unwrap_or(Duration::hours(3));
            if end - now > max {
                return Err(jit_invalid(
                    "JitDurationExceedsPolicy",
                    format!(
                        "Port {number}: the requested access duration ({}) exceeds the policy's maxRequestAccessDuration ({max_s}).",
                        format_duration(end - now)
                    ),
                ));
            }
            let prefix = match get_str_ci(port, "allowedSourceAddressPrefix", &pctx)? {
                Some(s) => s,
                None => match get_ci(port, "allowedSourceAddressPrefixes")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                {
                    Some(s) => s.to_string(),
                    // "If omitted, the request is for the source IP address of the initiate request."
                    None => client_ip.to_string(),
                },
            };
            if parse_net(&prefix).is_none() && prefix != "*" {
                return Err(jit_invalid(
                    "JitInvalidSourceAddressPrefix",
                    format!("Port {number}: '{prefix}' is not an IP address or CIDR prefix."),
                ));
            }
            if !prefix_allowed(rule, &prefix) {
                return Err(jit_invalid(
                    "JitSourcePrefixNotAllowed",
                    format!(
                        "Port {number}: source address prefix '{prefix}' is not allowed by the JIT policy for virtual machine '{id}'."
                    ),
                ));
            }
            // A window whose end already passed is recorded as expired at once.
            let (status, reason) = if end <= now {
                ("Revoked", "Expired")
            } else {
                (initiate_status.as_str(), "UserRequested")
            };
            if end > now {
                opened.push((normalize_scope(&id), number));
                // As stored (whole 100 ns ticks), which is what expiry compares.
                let stored = parse_time(&fmt_time(end)).unwrap_or(end);
                first_end = Some(first_end.map_or(stored, |f: DateTime<Utc>| f.min(stored)));
            }
            out_ports.push(json!({
                "number": number,
                "allowedSourceAddressPrefix": prefix,
                "endTimeUtc": fmt_time(end),
                "status": status,
                "statusReason": reason,
            }));
        }
        out_vms.push(json!({"id": id, "ports": out_ports}));
    }
    // A newer request on the same VM + port supersedes the older one.
    for r in &mut pol.requests {
        let vm_ports: Vec<(String, usize)> = r
            .get("virtualMachines")
            .and_then(Value::as_array)
            .map(|vms| {
                vms.iter()
                    .enumerate()
                    .map(|(k, v)| {
                        (
                            normalize_scope(
                                v.get("id").and_then(Value::as_str).unwrap_or_default(),
                            ),
                            k,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (vm_id, k) in vm_ports {
            if let Some(ports) = r["virtualMachines"][k]
                .get_mut("ports")
                .and_then(Value::as_array_mut)
            {
                for port in ports {
                    let n = port
                        .get("number")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX);
                    let active = port
                        .get("status")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s == "Initiated" || s == "Initiating");
                    if active
                        && opened
                            .iter()
                            .any(|(v, num)| v.eq_ignore_ascii_case(&vm_id) && *num == n)
                    {
                        port["status"] = json!("Revoked");
                        port["statusReason"] = json!("NewerRequestInitiated");
                    }
                }
            }
        }
    }
    let mut request = json!({
        "virtualMachines": out_vms,
        "startTimeUtc": fmt_time(now),
        "requestor": requestor,
    });
    if let Some(j) = justification {
        request["justification"] = json!(j);
    }
    pol.requests.push(request.clone());
    if let Some(end) = first_end {
        pol.next_end = Some(pol.next_end.map_or(end, |n| n.min(end)));
    }
    if pol.requests.len() > retention {
        let drop = pol.requests.len() - retention;
        pol.requests.drain(0..drop);
    }
    // The stored copy says Initiated even when the 202 says Initiating.
    if let Some(last) = pol.requests.last_mut() {
        for port in ports_mut(last) {
            if port.get("status").and_then(Value::as_str) == Some("Initiating") {
                port["status"] = json!("Initiated");
            }
        }
    }
    Ok(request)
}

/// Out-of-band close (`POST /_sim/jit/revoke`): open ports of `vm_id`/`port` become
/// `Revoked`/`UserRequested`. Returns how many ports changed.
pub fn revoke(state: &mut State, vm_id: &str, port: Option<u64>, now: DateTime<Utc>) -> usize {
    let vm = normalize_scope(vm_id);
    let mut n = 0;
    for pol in &mut state.jit_policies {
        pol.expire(now);
        for r in &mut pol.requests {
            if let Some(vms) = r.get_mut("virtualMachines").and_then(Value::as_array_mut) {
                for v in vms {
                    let same = v
                        .get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|x| normalize_scope(x).eq_ignore_ascii_case(&vm));
                    if !same {
                        continue;
                    }
                    for pp in v
                        .get_mut("ports")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        let num_ok = port.is_none_or(|want| {
                            pp.get("number").and_then(Value::as_u64) == Some(want)
                        });
                        let active = pp
                            .get("status")
                            .and_then(Value::as_str)
                            .is_some_and(|s| s == "Initiated" || s == "Initiating");
                        if num_ok && active {
                            pp["status"] = json!("Revoked");
                            pp["statusReason"] = json!("UserRequested");
                            n += 1;
                        }
                    }
                }
            }
        }
    }
    n
}
