//! JIT: opening VM ports (initiate), watching the request, and closing early by superseding
//! it with a short one (JIT has no revoke API).

use super::Ctx;
use super::names::jit_marker;
use super::status::fmt_t;
use super::types::*;
use crate::api::{Intent, JitPortStatus, JitStatus, Operation, Phase};
use crate::constants::reason;
use crate::validate::{ValidGrant, ValidJit};
use chrono::{DateTime, Duration, Utc};

impl Ctx<'_> {
    pub(super) fn record_jit_request(&mut self, intent: &Intent, req: &JitRequestView) {
        self.st.jit = Some(JitStatus {
            marker: Some(intent.request_id.clone()),
            request_start_time: req.start,
            requestor: req.requestor.clone(),
            ports: req
                .ports
                .iter()
                .map(|p| JitPortStatus {
                    vm_id: p.vm_id.clone(),
                    number: i32::from(p.number),
                    allowed_source_address_prefix: p.prefix.clone(),
                    status: Some(p.status.clone()),
                    status_reason: p.status_reason.clone(),
                    end_time_utc: p.end,
                })
                .collect(),
        });
    }

    /// Whether Azure shows a port open by this grant's requests; None until the JIT policy is
    /// read (the need is pushed).
    pub(super) fn jit_open_in_azure(&mut self) -> Option<bool> {
        let Some(marker) = self.st.jit.as_ref().and_then(|j| j.marker.clone()) else {
            return Some(false);
        };
        match &self.input.observed.jit_policy {
            Read::NotRead => {
                self.need(Need::JitPolicy);
                None
            }
            Read::Missing => Some(false),
            // Our own close requests keep a port open for the early-close window: not access.
            Read::Found(p) => Some(p.requests.iter().any(|r| {
                r.justification.as_deref().is_some_and(|j| {
                    (j.contains(&marker) || jit_same_grant(j, &marker))
                        && !j.contains(JIT_CLOSE_WORDS)
                }) && r
                    .ports
                    .iter()
                    .any(|p| !p.closed && p.end.is_some_and(|e| e > self.now()))
            })),
        }
    }

    pub(super) fn take_away_jit(&mut self) {
        let Some(t) = self.st.target.as_ref().and_then(|t| t.jit.clone()) else {
            return self.nothing_requested();
        };
        let pol = match &self.input.observed.jit_policy {
            Read::NotRead => return self.need(Need::JitPolicy),
            Read::Missing => {
                self.access_gone(
                    self.revoke_reason(),
                    "the JIT policy no longer exists; its requests are gone".into(),
                );
                return;
            }
            Read::Found(p) => p.clone(),
        };
        let Some(marker) = self.st.jit.as_ref().and_then(|j| j.marker.clone()) else {
            self.access_gone(
                self.revoke_reason(),
                "no JIT request had reached Azure".into(),
            );
            return;
        };
        let open_until = jit_open_until(&pol, &marker, self.now());
        let Some(open_until) = open_until else {
            self.access_gone(self.revoke_reason(), "JIT shows our ports closed".into());
            return;
        };
        // Already superseded by our own close request (Azure lists it, still in its window), so
        // never close twice. Read from Azure, not from the phase: a close whose intent was
        // recorded but which never reached Azure (crash) leaves the grant Revoking with nothing
        // sent. A close whose window had already passed when Azure took it (it waited longer
        // than the window for ARM's write budget) was recorded as expired and superseded
        // nothing: the ports are still open, so it does not count and a new close goes out.
        let now = self.now();
        let closing = pol.requests.iter().any(|r| {
            r.justification
                .as_deref()
                .is_some_and(|j| j.contains(JIT_CLOSE_WORDS) && jit_same_grant(j, &marker))
                && r.ports
                    .iter()
                    .any(|p| !p.closed && p.end.is_some_and(|e| e > now))
        });
        if let (Some(window), false) = (self.cfg().jit_early_close, closing)
            && open_until > self.now() + window
        {
            {
                let attempt = self.st.attempt + 1;
                let marker = jit_marker(self.meta(), attempt);
                let end = self.now() + window;
                let vms = jit_initiate_vms(&t, end);
                let justification = format!(
                    "accessgrant {}/{}: {JIT_CLOSE_WORDS} ({}) {marker}",
                    self.meta().namespace,
                    self.meta().name,
                    self.revoke_reason()
                );
                let w = AzureWrite::JitInitiate {
                    subscription_id: t.subscription_id.clone(),
                    resource_group: t.resource_group.clone(),
                    location: t.location.clone(),
                    policy_name: t.policy_name.clone(),
                    vms,
                    justification,
                };
                self.write(
                    Operation::JitClose,
                    attempt,
                    marker,
                    Some(end),
                    w,
                    Phase::Revoking,
                    self.revoke_reason(),
                    "closing JIT access early by superseding it with a one-minute window".into(),
                );
                return;
            }
        }
        let msg = if self.cfg().jit_early_close.is_none() {
            format!(
                "JIT has no revoke API and early close is off: the ports close at {}",
                open_until.to_rfc3339()
            )
        } else {
            format!(
                "waiting for the JIT ports to close at {}",
                open_until.to_rfc3339()
            )
        };
        self.st.end_time = Some(open_until);
        self.transition(Phase::Revoking, self.revoke_reason(), msg);
        self.wake_at(open_until + self.cfg().confirm_poll);
    }

    pub(super) fn request_jit(
        &mut self,
        g: &ValidGrant,
        j: &ValidJit,
        end: DateTime<Utc>,
        renewing: bool,
    ) {
        let now = self.now();
        if !renewing && let Some(h) = self.input.port_holder {
            // Azure keeps one JIT request per VM port: asking now would close the other
            // grant's access. Wait for it (before any read or write).
            let until = h
                .until
                .map(|t| format!(" until {}", t.to_rfc3339()))
                .unwrap_or_default();
            self.transition(
                Phase::Pending,
                reason::PORT_HELD,
                format!(
                    "{} is held by AccessGrant {}{until}: Azure keeps one JIT request per VM port and a second one would close it; this grant asks once that one is done (its duration counts from then)",
                    h.port, h.grant
                ),
            );
            let poll = now + self.cfg().confirm_poll.max(Duration::seconds(5));
            self.wake_at(h.until.map_or(poll, |t| poll.min(t + Duration::seconds(1))));
            return;
        }
        let pol = match &self.input.observed.jit_policy {
            Read::NotRead => return self.need(Need::JitPolicy),
            Read::Missing => {
                self.transition(Phase::Failed, reason::JIT_POLICY_NOT_FOUND, format!("JIT policy {} in {}/{} does not exist: check spec.jit.policyName, resourceGroup and location", j.policy_name, j.resource_group, j.location));
                return;
            }
            Read::Found(p) => p.clone(),
        };
        let mut end = end;
        let mut note = String::new();
        for vm in &j.vms {
            let Some(pvm) = pol
                .vms
                .iter()
                .find(|v| crate::arm_id::ArmId::parse(&v.id).is_ok_and(|id| id == vm.id))
            else {
                self.st.status_reason = Some("VirtualMachineNotInPolicy".into());
                self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("VM {} is not configured in JIT policy {}: ask an admin to enable JIT for it", vm.id, j.policy_name));
                return;
            };
            for port in &vm.ports {
                let Some(rule) = pvm.ports.iter().find(|r| r.number == port.number) else {
                    self.st.status_reason = Some("PortNotInPolicy".into());
                    self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("port {} is not configured for VM {} in JIT policy {} (configured: {:?})", port.number, vm.id.name().unwrap_or_default(), j.policy_name, pvm.ports.iter().map(|r| r.number).collect::<Vec<_>>()));
                    return;
                };
                for prefix in &port.prefixes {
                    let ok = rule.allowed_prefixes.iter().any(|a| {
                        a == "*"
                            || crate::validate::parse_prefix(a).is_ok_and(|net| {
                                net == *prefix
                                    || (net.contains(prefix)
                                        && matches!(
                                            (net, prefix),
                                            (ipnet::IpNet::V4(_), ipnet::IpNet::V4(_))
                                                | (ipnet::IpNet::V6(_), ipnet::IpNet::V6(_))
                                        ))
                            })
                    });
                    if !ok {
                        self.st.status_reason = Some("SourcePrefixNotAllowed".into());
                        self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("source {prefix} is not allowed for port {} by JIT policy {} (allowed: {})", port.number, j.policy_name, rule.allowed_prefixes.join(", ")));
                        return;
                    }
                }
                if let Some(max) = rule.max_duration
                    && end - now > max
                {
                    if g.clamp_duration {
                        note = format!(
                            " (clamped to the JIT policy's maximum {})",
                            crate::api::duration::format_iso_duration(max)
                        );
                        end = now + max;
                    } else {
                        self.st.status_reason = Some("MaxRequestAccessDuration".into());
                        self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("the duration {} exceeds the JIT policy's maxRequestAccessDuration {} for port {}: shorten spec.duration or set spec.clampDuration: true", crate::api::duration::format_iso_duration(end - now), crate::api::duration::format_iso_duration(max), port.number));
                        return;
                    }
                }
            }
        }
        self.record_target(g);
        let attempt = if renewing {
            self.st.attempt + 1
        } else {
            self.st.attempt.max(1)
        };
        let marker = jit_marker(self.meta(), attempt);
        let Some(t) = self.st.target.as_ref().and_then(|t| t.jit.clone()) else {
            return;
        };
        // Azure already lists a request with this attempt's marker (its intent was lost, or
        // another replica sent it): adopt it rather than open the ports a second time.
        if let Some(req) = pol
            .requests
            .iter()
            .find(|r| {
                r.justification
                    .as_deref()
                    .is_some_and(|j| j.contains(&marker))
            })
            .cloned()
        {
            self.ensure_finalizer();
            self.st.attempt = attempt;
            self.st.observed_generation = Some(self.meta().generation);
            if renewing {
                self.st.phase = Phase::Renewing;
            }
            let intent = Intent {
                operation: Operation::JitInitiate,
                attempt,
                request_id: marker,
                recorded_at: now,
                requested_end: Some(end),
            };
            self.apply_answer(&intent, &WriteAnswer::Jit(req));
            self.wake_at(now + self.cfg().confirm_poll);
            return;
        }
        let mut justification = self.justification_text(g).unwrap_or_else(|| {
            self.attributed(format!(
                "accessgrant {}/{}",
                self.meta().namespace,
                self.meta().name
            ))
        });
        if let Some(tk) = &g.ticket {
            justification.push_str(&format!(" ticket {} {}", tk.system, tk.number));
        }
        justification.push(' ');
        justification.push_str(&marker);
        let w = AzureWrite::JitInitiate {
            subscription_id: j.subscription_id.clone(),
            resource_group: j.resource_group.clone(),
            location: j.location.clone(),
            policy_name: j.policy_name.clone(),
            vms: jit_initiate_vms(&t, end),
            justification,
        };
        let js = self.st.jit.get_or_insert_with(JitStatus::default);
        js.marker = Some(marker.clone());
        let (phase, why) = if renewing {
            (Phase::Renewing, reason::RENEWED)
        } else {
            (Phase::Requesting, reason::REQUESTED)
        };
        self.write(
            Operation::JitInitiate,
            attempt,
            marker,
            Some(end),
            w,
            phase,
            why,
            format!("JIT initiate requested until {}{note}", end.to_rfc3339()),
        );
    }
}

fn jit_end(req: &JitRequestView) -> Option<DateTime<Utc>> {
    req.ports.iter().filter_map(|p| p.end).max()
}

/// The latest instant any port of our (marker) request is still open, or None when closed.
fn jit_open_until(pol: &JitPolicyView, marker: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Our own close request (a newer attempt) may hold the ports open until its end too.
    pol.requests
        .iter()
        .filter(|r| {
            r.justification
                .as_deref()
                .is_some_and(|j| j.contains(marker) || jit_same_grant(j, marker))
        })
        .flat_map(|r| r.ports.iter())
        .filter(|p| !p.closed)
        .filter_map(|p| p.end)
        .filter(|e| *e > now)
        .max()
}

/// Words in the justification of our JIT close requests (how a pass recognises its own close).
const JIT_CLOSE_WORDS: &str = "closing early";

/// True when a justification carries a marker of the same grant (any attempt).
fn jit_same_grant(justification: &str, marker: &str) -> bool {
    // marker = [ag:ns/name#N.uid8]; same grant = same "[ag:ns/name#" prefix and ".uid8]" suffix.
    let (Some(hash), Some(dot)) = (marker.find('#'), marker.rfind('.')) else {
        return false;
    };
    let (prefix, suffix) = (&marker[..=hash], &marker[dot..]);
    justification.find(prefix).is_some_and(|i| {
        let rest = &justification[i + prefix.len()..];
        rest.find(']').is_some_and(|close| {
            rest[..=close].ends_with(suffix)
                && rest[..rest.len().min(close)]
                    .split('.')
                    .next()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
    })
}

fn jit_initiate_vms(t: &crate::api::JitTarget, end: DateTime<Utc>) -> Vec<JitInitiateVm> {
    t.virtual_machines
        .iter()
        .map(|vm| JitInitiateVm {
            id: vm.id.clone(),
            ports: vm
                .ports
                .iter()
                .flat_map(|p| {
                    let prefixes: Vec<String> = match (
                        &p.allowed_source_address_prefix,
                        &p.allowed_source_address_prefixes,
                    ) {
                        (Some(one), _) => vec![one.clone()],
                        (None, Some(many)) => many.clone(),
                        (None, None) => vec![],
                    };
                    prefixes.into_iter().map(move |prefix| JitInitiatePort {
                        number: u16::try_from(p.number).unwrap_or(0),
                        allowed_source_address_prefix: prefix,
                        end_time_utc: end,
                    })
                })
                .collect(),
        })
        .collect()
}

impl Ctx<'_> {
    /// An Active JIT grant: is our request still listed and open, is renewal due.
    pub(super) fn watch_active_jit(&mut self, g: &ValidGrant, end: DateTime<Utc>, can_renew: bool) {
        let now = self.now();
        let pol = match &self.input.observed.jit_policy {
            Read::NotRead => return self.need(Need::JitPolicy),
            Read::Missing => {
                self.st.status_reason = Some("JitPolicyNotFound".into());
                self.transition(Phase::Revoked, reason::REVOKED_OUT_OF_BAND, "the JIT policy was deleted; its access is gone. Not re-granted: change the spec to ask again".into());
                return;
            }
            Read::Found(p) => p.clone(),
        };
        let marker = self
            .st
            .jit
            .as_ref()
            .and_then(|j| j.marker.clone())
            .unwrap_or_default();
        // The newest request with our marker: if Azure lists two (two writers raced), the
        // newer superseded the older and is the one in force.
        let ours = pol
            .requests
            .iter()
            .filter(|r| {
                r.justification
                    .as_deref()
                    .is_some_and(|j| j.contains(&marker))
            })
            .max_by_key(|r| r.start);
        let Some(req) = ours.cloned() else {
            if now >= end {
                self.expired("Expired".into());
            } else {
                self.st.status_reason = Some("RequestNotListed".into());
                self.transition(
                    Phase::Revoked,
                    reason::REVOKED_OUT_OF_BAND,
                    "our JIT request is no longer listed in the policy; not re-granted".into(),
                );
            }
            return;
        };
        self.record_jit_request(
            &Intent {
                operation: Operation::JitInitiate,
                attempt: self.st.attempt,
                request_id: marker.clone(),
                recorded_at: now,
                requested_end: None,
            },
            &req,
        );
        let closed: Vec<&JitRequestPortView> = req.ports.iter().filter(|p| p.closed).collect();
        if !closed.is_empty() {
            let reason_s = closed[0].status_reason.clone().unwrap_or_default();
            if reason_s.eq_ignore_ascii_case("Expired") || now >= end {
                if can_renew && self.st.phase != Phase::Renewing {
                    // Missed the renewal window: renew now (a gap happened; record it).
                    return self.renew(g);
                }
                self.expired(reason_s);
            } else {
                self.st.status_reason = Some(reason_s.clone());
                self.transition(Phase::Revoked, reason::REVOKED_OUT_OF_BAND, format!("JIT access ended before its end time ({reason_s}); not re-granted: change the spec to ask again"));
            }
            return;
        }
        if now >= end + self.cfg().confirm_poll {
            // Past the end but Azure has not closed it yet.
            self.wake_at(now + self.cfg().confirm_poll);
            return;
        }
        let renew_at = end - g.renewal.as_ref().map_or(Duration::zero(), |r| r.before);
        if can_renew && now >= renew_at {
            return self.renew(g);
        }
        if can_renew {
            self.wake_at(renew_at);
        }
        self.wake_at(end + self.cfg().confirm_poll);
        self.wake_at(now + self.cfg().drift_check);
    }

    /// Azure answered a JIT initiate (ours, or our early close).
    pub(super) fn apply_jit_answer(&mut self, intent: &Intent, req: &JitRequestView) {
        match intent.operation {
            Operation::JitInitiate => {
                self.st.intent = None;
                self.record_jit_request(intent, req);
                let renewing = self.st.renewals > 0 || self.st.phase == Phase::Renewing;
                let end = jit_end(req).or(intent.requested_end);
                if renewing && intent.attempt > 1 && self.st.start_time.is_some() {
                    self.st.renewals += 1;
                    self.st.end_time = end;
                    self.transition(
                        Phase::Active,
                        reason::RENEWED,
                        format!("JIT access renewed until {}", fmt_t(end)),
                    );
                } else {
                    self.st.start_time = req.start.or(Some(self.now()));
                    self.st.end_time = end;
                    self.transition(
                        Phase::Active,
                        reason::GRANTED,
                        format!("JIT access open until {}", fmt_t(end)),
                    );
                }
                self.st.status_reason = req.ports.first().and_then(|p| p.status_reason.clone());
            }
            Operation::JitClose => {
                self.st.intent = None;
                self.record_jit_request(intent, req);
                let end = jit_end(req).or(intent.requested_end);
                self.st.end_time = end;
                self.transition(
                    Phase::Revoking,
                    self.revoke_reason(),
                    format!(
                        "JIT has no revoke API: superseded our request with one that closes at {}",
                        fmt_t(end)
                    ),
                );
            }
            _ => {}
        }
    }
}
